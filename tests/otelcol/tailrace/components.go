// otelcol-tailrace: the receiving end of the tests: the OTLP receiver in front of the contrib
// file exporter, which the tests read back (and the core OTLP/HTTP exporter, to relay).
// Every collector module at one release (contrib v0.161.0, see go.mod).
package main

import (
	"github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter"
	"go.opentelemetry.io/collector/exporter"
	"go.opentelemetry.io/collector/exporter/otlphttpexporter"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
)

var receivers = []receiver.Factory{otlpreceiver.NewFactory()}

var exporters = []exporter.Factory{fileexporter.NewFactory(), otlphttpexporter.NewFactory()}
