"""After release: the prediction log (`predictions`), feedback (`feedback`), the statistics both the monitor report
and the server's live gauges compute (`statistics`, `live`), and `tunesmith monitor`'s report (`report`)."""
