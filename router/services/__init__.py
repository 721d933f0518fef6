"""The gRPC servicers, one module per turnout.v1 service."""
