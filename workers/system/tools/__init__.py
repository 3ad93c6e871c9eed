"""The tools of the system pool (dsl.md §8): one module per kind, run through `dispatch`."""
