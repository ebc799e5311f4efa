"""Helpers shared by the tests: small models with exact Hessians, quadratic models with known
curvature, model snapshots, multi-process runs and figure checks. Test files import these, never
each other."""
