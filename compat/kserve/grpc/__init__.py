"""KServe v2 over gRPC: converters (protobuf <-> Python values) and a servicer over the data plane."""
