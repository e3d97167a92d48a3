"""The labelled suites of broken and healthy runs the verdict is measured on."""
