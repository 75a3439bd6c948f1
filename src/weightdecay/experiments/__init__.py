"""The reproduction of the paper's study on Fashion-MNIST.

``data`` (IDX reader, locator, split), ``models``, ``train`` (one run),
``store`` (SQLite results), ``sweep`` (executors, resumable sweeps),
``studies`` (the four studies and their profiles); ``analysis``, ``plots``
and ``report`` turn stored records into the report.
"""
