"""The gRPC edge: authenticates callers, validates and converts messages,
calls the core, and maps domain errors to status codes and ErrorInfo reasons."""
