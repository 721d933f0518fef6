"""The one package converting between protobuf messages and domain values (one module per service)."""
