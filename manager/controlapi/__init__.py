"""The manager's control API served with aiohttp."""
