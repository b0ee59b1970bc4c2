"""Run tracking: the tracker the loop talks to, the observer (local record + MongoDB), the database connection, records, upload/sync, the embedded server, Omniboard."""
