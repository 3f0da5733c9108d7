"""What the worker measures: gate telemetry, the pure gate formulas, per-step safety breakers and
per-region signals. Narset judges what is measured here.
"""
