"""The suite: property tests of the formulas (run anywhere) and GPU-marked measured tests."""
