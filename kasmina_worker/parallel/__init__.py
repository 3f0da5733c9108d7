"""DDP / FSDP2 / compile: the leader-follower collectives at a boundary, rebuilding wrapped models, DCP."""
