"""Raw data in, checked tables out: fetch and unpack the sources, verify the photos, split them, and
the CSV tables and parallel map those stages share."""
