"""The fleet profile: the non-secret attachment of a machine to the shared build
substrate (model), where it is read from (sources), the commands over it (commands), and
the Bazel credential helper (credhelper)."""
