"""Generated protobuf and gRPC code for the narset.v1 contract (see proto/). Do not edit."""
