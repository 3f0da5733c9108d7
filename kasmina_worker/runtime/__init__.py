"""The scaffolds' life in a job: surgery and exits, alpha schedules, commands, optimiser groups,
teaching losses and the checkpoint state.
"""
