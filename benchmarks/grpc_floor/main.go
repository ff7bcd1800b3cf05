// The Go server of benchmarks/grpc_floor.py: /runtime.v1.RuntimeService/Version
// answered with the same bytes every time (hex in argv[2]), through a pass-through
// codec, so that protobuf is not run either: what is left is grpc-go and the socket.
//
// grpc_floor.py builds it (GOPATH mode, Debian's golang-google-grpc-dev) and runs it as
//
//	goserver SOCKET RESPONSE_HEX
package main

import (
	"context"
	"encoding/hex"
	"log"
	"net"
	"os"

	"google.golang.org/grpc"
)

type rawCodec struct{ response []byte }

func (c rawCodec) Marshal(v interface{}) ([]byte, error)      { return c.response, nil }
func (c rawCodec) Unmarshal(data []byte, v interface{}) error { return nil }
func (c rawCodec) String() string                             { return "raw" }

type runtimeService interface{}

func version(srv interface{}, ctx context.Context, dec func(interface{}) error, _ grpc.UnaryServerInterceptor) (interface{}, error) {
	var request []byte
	if err := dec(&request); err != nil {
		return nil, err
	}
	return &request, nil
}

var service = grpc.ServiceDesc{
	ServiceName: "runtime.v1.RuntimeService",
	HandlerType: (*runtimeService)(nil),
	Methods:     []grpc.MethodDesc{{MethodName: "Version", Handler: version}},
}

func main() {
	if len(os.Args) != 3 {
		log.Fatal("usage: SOCKET RESPONSE_HEX")
	}
	response, err := hex.DecodeString(os.Args[2])
	if err != nil {
		log.Fatal(err)
	}
	listener, err := net.Listen("unix", os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	server := grpc.NewServer(grpc.CustomCodec(rawCodec{response}))
	server.RegisterService(&service, struct{}{})
	log.Fatal(server.Serve(listener))
}
