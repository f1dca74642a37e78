"""The Open Inference Protocol (KServe v2): the protocol itself, and its gRPC front end."""
