//! Integration tests that load the real flagtrace programs; see tests/*.rs.
