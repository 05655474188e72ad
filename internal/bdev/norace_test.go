//go:build !race

package bdev_test

const raceEnabled = false
