"""What both gRPC services share: error mapping, interceptors, configuration, server lifecycle."""
