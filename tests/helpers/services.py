"""Facts about the test services that tests share."""

SASL_PASSWORD = "kafka-S3cr3t-y"  # the test broker's SASL/PLAIN login (rowcast / this)
