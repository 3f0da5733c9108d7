"""The contract both planes apply: blueprint catalogue, scaffold policies, stages and protocol rules.

The only Narset code the worker may import (with the generated `narset.v1`). No torch, no gRPC server.
"""
