"""Generated gRPC and protobuf stubs for rotor.v1 (make proto); never edit by hand."""
