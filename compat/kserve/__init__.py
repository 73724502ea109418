"""KServe v1/v2 REST and v2 gRPC compatibility faces (imports engines/ only). Not built yet."""
