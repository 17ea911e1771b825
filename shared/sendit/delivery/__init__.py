"""What `deliver` does with one batch: objects (copy or pack to the destination bucket), rows (BigQuery),
cleanup (staging and processing objects of verified deliveries)."""
