"""Support code that students never edit: .mat reading, images, command-line helpers, fixtures."""
