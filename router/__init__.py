"""The async shell: CLI, configuration, gRPC servicers, HTTP side, metrics and wiring."""
