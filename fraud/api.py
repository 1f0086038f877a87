"""GET /api/fraud/alerts: the tenant's fraud alerts, newest first."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from fraud.rules import Rule
from fraud.selectors import fraud_alert_list
from tenants.authentication import tenant_of

MAX_LIMIT = 1000


class FraudAlertListView(APIView):
    class InputSerializer(serializers.Serializer):
        user_id = serializers.CharField(
            required=False, max_length=128, trim_whitespace=False, help_text="Alerts of this user."
        )
        rule = serializers.ChoiceField(required=False, choices=[r.value for r in Rule])
        since = serializers.DateTimeField(required=False, help_text="Alerts raised at or after this time.")
        limit = serializers.IntegerField(required=False, min_value=1, max_value=MAX_LIMIT, default=100)

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "FraudAlert"  # the OpenAPI component name

        id = serializers.IntegerField()
        rule = serializers.CharField()
        subject = serializers.CharField(help_text="The user id, or the IP for ip_distinct_users.")
        user_id = serializers.CharField(help_text="The user whose event closed the hitting window.")
        event_type = serializers.CharField()
        window_start = serializers.DateTimeField()
        window_end = serializers.DateTimeField()
        window_seconds = serializers.IntegerField()
        threshold = serializers.IntegerField()
        event_count = serializers.IntegerField()
        event_ids = serializers.ListField(child=serializers.CharField())
        created_at = serializers.DateTimeField()

    @extend_schema(
        operation_id="fraud_alerts_list",
        summary="The tenant's fraud alerts",
        parameters=[InputSerializer],
        responses={
            200: inline_serializer("FraudAlertList", {"results": OutputSerializer(many=True)}),
            400: OpenApiResponse(description="validation_error"),
            401: OpenApiResponse(description="missing or wrong API key"),
            403: OpenApiResponse(description="disabled tenant"),
        },
    )
    def get(self, request: Request) -> Response:
        params = self.InputSerializer(
            data=request.query_params.dict()
        )  # dict: "?user_id=" is blank, not absent
        params.is_valid(raise_exception=True)
        alerts = fraud_alert_list(tenant=tenant_of(request).slug, **params.validated_data)
        return Response({"results": self.OutputSerializer(alerts, many=True).data})
