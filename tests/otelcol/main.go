// The OpenTelemetry Collector tailrace's tests and benchmarks run, one program for every build:
// the components come from components.go of the build (tests/otelcol/<build>/), the name and
// release from the builder's -ldflags. Build: tests/otelcol/build.sh <build>.
package main

import (
	"log"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/provider/envprovider"
	"go.opentelemetry.io/collector/confmap/provider/fileprovider"
	"go.opentelemetry.io/collector/confmap/provider/yamlprovider"
	"go.opentelemetry.io/collector/otelcol"
)

// Set by the builder (-ldflags -X).
var (
	command = "otelcol"
	release = "dev"
)

func main() {
	info := component.BuildInfo{
		Command:     command,
		Description: "OpenTelemetry Collector for tailrace tests and benchmarks",
		Version:     release,
	}
	settings := otelcol.CollectorSettings{
		BuildInfo: info,
		Factories: components,
		ConfigProviderSettings: otelcol.ConfigProviderSettings{
			ResolverSettings: confmap.ResolverSettings{
				ProviderFactories: []confmap.ProviderFactory{
					fileprovider.NewFactory(),
					envprovider.NewFactory(),
					yamlprovider.NewFactory(),
				},
			},
		},
	}
	if err := otelcol.NewCommand(settings).Execute(); err != nil {
		log.Fatal(err)
	}
}
