// Package agentmail serves agents' own mail clients: a read-only IMAP view of their queues and
// authenticated submission of replies; it goes through tickets and access like the web page does.
// It must not touch tickets' buckets itself, and accepts app passwords only, never web passwords.
package agentmail
