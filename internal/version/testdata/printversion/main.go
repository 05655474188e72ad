// Command printversion prints version.Get, for the package's test.
package main

import (
	"fmt"

	"github.com/nexstor/nexstor/internal/version"
)

func main() { fmt.Println(version.Get()) }
