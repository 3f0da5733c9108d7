"""The job's line to a control plane: the command source seam, the Narset transport, the child process
that owns the gRPC channel, the attach request and the boundary report.
"""
