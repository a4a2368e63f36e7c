"""Where results go: text, JSON lines, video, MQTT, Home Assistant, the dashboard, collected images."""
