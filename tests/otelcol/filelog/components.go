// otelcol-filelog: the peer bench/watchmodes.py measures tailrace against: the contrib filelog
// receiver tailing the same files, the core OTLP/HTTP exporter shipping to the same loopback
// receiver. Every collector module at one release (contrib v0.165.1, core v0.165.0 / v1.71.0):
// the filelog receiver's stanza package is not served at v0.161.0, and the contrib file
// exporter of the tests' build is not known to resolve past v0.161.0 here, so the two builds
// keep two releases (see the README's development section).
package main

import (
	"github.com/open-telemetry/opentelemetry-collector-contrib/receiver/filelogreceiver"
	"go.opentelemetry.io/collector/exporter"
	"go.opentelemetry.io/collector/exporter/otlphttpexporter"
	"go.opentelemetry.io/collector/receiver"
)

var receivers = []receiver.Factory{filelogreceiver.NewFactory()}

var exporters = []exporter.Factory{otlphttpexporter.NewFactory()}
