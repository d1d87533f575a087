"""The domain: keys and their lifecycle, tokens, rotation and the event hub.

Nothing here imports gRPC or SQL: the api layer translates, the store persists.
"""
