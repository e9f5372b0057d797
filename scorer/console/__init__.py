"""The analysts' console: a review queue and case pages in the browser, a JSON API, verdicts published as labels."""
