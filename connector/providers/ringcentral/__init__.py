"""RingCentral: forward a leaver's calls, move their numbers and archive their voicemail, then disable the extension."""
