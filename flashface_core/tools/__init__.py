"""Command-line and development tools (runner, downloader, converter, golden checks, graph tools); nothing at run time imports them."""
