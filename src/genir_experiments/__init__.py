"""Our experiments on the bundled data, apart from the library: the bundled tasks
(`tasks.py`), the universal study (`universal.py`, `universal_data.py`), the papers'
ablations (`ablate.py`), one `Task` protocol by name (`registry.py`) and the commands they
add to `genir` (`cli.py`, through the `genir.plugins` entry point). This package uses
`genir`; `genir` never imports it."""
