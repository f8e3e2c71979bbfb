"""Monitoring: live challenger results on real decisions and in-loan early warning."""
