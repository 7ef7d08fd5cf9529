// Package inbound receives support mail (SMTP server, IMAP fetch), verifies who sent it
// (SPF, DKIM, DMARC) and hands it to tickets; it never writes to bbolt directly.
package inbound
