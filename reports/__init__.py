"""Results → leaderboards, plots and reports."""
