"""What a scaffold is made of: the blended scaffold module, blueprints and their seeds, the pure delta
functions, folds, host layouts and module surgery.
"""
