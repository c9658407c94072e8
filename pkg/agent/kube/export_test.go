package kube

// What kube_test reaches of the package's insides.
var TrimPod = trimPod

const MaxKeptAnnotation = maxKeptAnnotation

var TrimSlice = trimSlice
