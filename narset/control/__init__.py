"""Narset's domain logic: attach and boundary exchange, command ledger, exit decisions, gate judging,
tactical policy, events. No `grpc.aio`, no argparse: the server adapts it to gRPC.
"""
