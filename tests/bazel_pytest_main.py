"""Entry point of the Bazel py_test targets: runs pytest on the test files given as arguments.

A pytest file run directly as a script would define its tests and exit 0 without running any, so
every py_test goes through this runner, which exits with pytest's status.
"""

import sys

import pytest

if __name__ == "__main__":
  sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
