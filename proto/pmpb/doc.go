// Package pmpb holds the Go code generated from proto/profilemate/v1/profilemate.proto (run
// proto/generate.sh); helpers that build and check these messages live in package proto.
package pmpb
