// Command kstatus prints kstatus's verdict (sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute, the library behind
// Flux's health checks) for Kubernetes objects read as JSON from stdin: one object, a JSON array of objects, or a
// List (`kubectl get -o json`: kind *List with items). One line per object: {"status": ..., "message": ...};
// status is Unknown, with the error as message, when Compute fails (as kstatus's poller reports such an object).
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	var in any // one object, an array of objects or a List
	data, err := io.ReadAll(os.Stdin)
	if err == nil {
		err = utiljson.Unmarshal(data, &in) // whole numbers become int64, as the API machinery reads them
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kstatus: stdin:", err)
		os.Exit(2)
	}
	objs, _ := in.([]any)
	if m, ok := in.(map[string]any); ok {
		objs = []any{m}
		if items, ok := m["items"].([]any); ok && strings.HasSuffix(fmt.Sprint(m["kind"]), "List") {
			objs = items
		}
	}
	out := json.NewEncoder(os.Stdout)
	out.SetEscapeHTML(false)
	for _, o := range objs {
		v := map[string]string{"status": string(status.UnknownStatus), "message": "not a JSON object"}
		if m, ok := o.(map[string]any); ok {
			if res, err := status.Compute(&unstructured.Unstructured{Object: m}); err != nil {
				v["message"] = err.Error()
			} else {
				v["status"], v["message"] = string(res.Status), res.Message
			}
		}
		_ = out.Encode(v)
	}
}
