"""`narset demo`: the whole loop on one machine. Lives outside both planes: the one place that imports
both Narset and Kasmina (`narset demo` reaches it through one lazy import).
"""
