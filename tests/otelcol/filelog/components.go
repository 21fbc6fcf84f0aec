// otelcol-filelog: the peer bench/watchmodes.py measures tailrace against: the contrib filelog
// receiver tailing the same files, the core OTLP/HTTP exporter shipping to the same loopback
// receiver. Every collector module at one release (contrib v0.165.1, core v0.165.0 / v1.71.0):
// the filelog receiver's stanza package is not served at v0.161.0, and the contrib file
// exporter of the tests' build did not resolve at v0.165.1 here, so the two builds keep two
// releases (see the README's development section).
package main

import (
	"github.com/open-telemetry/opentelemetry-collector-contrib/receiver/filelogreceiver"
	"go.opentelemetry.io/collector/exporter"
	"go.opentelemetry.io/collector/exporter/otlphttpexporter"
	"go.opentelemetry.io/collector/otelcol"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/service/telemetry/otelconftelemetry"
)

func components() (otelcol.Factories, error) {
	var err error
	f := otelcol.Factories{Telemetry: otelconftelemetry.NewFactory()}
	if f.Receivers, err = otelcol.MakeFactoryMap[receiver.Factory](filelogreceiver.NewFactory()); err != nil {
		return f, err
	}
	f.Exporters, err = otelcol.MakeFactoryMap[exporter.Factory](otlphttpexporter.NewFactory())
	return f, err
}
