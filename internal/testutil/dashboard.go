package testutil

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
)

// DashboardPath is the Grafana dashboard the Helm chart ships (and
// deploy/grafana/nexstor.json links to), relative to the repository root.
const DashboardPath = "deploy/helm/nexstor/dashboards/nexstor.json"

var metricNameRE = regexp.MustCompile(`\b(?:nexstor|process|go)_[a-z0-9_]+\b`)

// DashboardQuery is one PromQL expression of the dashboard and the metric
// names it reads.
type DashboardQuery struct {
	Panel, Expr string
	Metrics     []string
}

// DashboardQueries reads the dashboard at path and returns every query
// (panel targets and templating variables) with the metric names in it.
// It fails when the file is not JSON or a query names no metric.
func DashboardQueries(path string) ([]DashboardQuery, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var qs []DashboardQuery
	add := func(panel, expr string) error {
		names := slices.Compact(slices.Sorted(slices.Values(metricNameRE.FindAllString(expr, -1))))
		if len(names) == 0 {
			return fmt.Errorf("%s: panel %q: query %q names no metric", path, panel, expr)
		}
		qs = append(qs, DashboardQuery{Panel: panel, Expr: expr, Metrics: names})
		return nil
	}
	for _, p := range d.Panels {
		for _, t := range p.Targets {
			if err := add(p.Title, t.Expr); err != nil {
				return nil, err
			}
		}
	}
	for _, v := range d.Templating.List {
		if strings.TrimSpace(v.Definition) != "" {
			if err := add("variable "+v.Name, v.Definition); err != nil {
				return nil, err
			}
		}
	}
	return qs, nil
}

// MetricFamilyCandidates returns the metric families a name in a query can
// belong to: itself, and for a histogram's or summary's series
// (`_bucket`, `_sum`, `_count`) the family it is part of.
func MetricFamilyCandidates(name string) []string {
	c := []string{name}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suf); ok {
			c = append(c, base)
		}
	}
	return c
}
