"""GET /api/users/{user_id}/score: a user's engagement score and segment, as of now."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from scoring.selectors import user_score_get
from tenants.authentication import tenant_of

# Decimal places of the score in responses: enough to compare, short enough to read.
SCORE_DECIMALS = 4


class UserScoreView(APIView):
    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "UserScore"  # the OpenAPI component name

        user_id = serializers.CharField()
        score = serializers.FloatField(help_text="Sum of weights decayed with a 7-day half-life, as of now.")
        segment = serializers.ChoiceField(choices=["high_intent", "engaged", "casual"])
        events_counted = serializers.IntegerField()
        updated_at = serializers.DateTimeField(help_text="When the score last changed.")

    @extend_schema(
        operation_id="user_score_retrieve",
        summary="A user's engagement score",
        responses={
            200: OutputSerializer,
            401: OpenApiResponse(description="missing or wrong API key"),
            403: OpenApiResponse(description="disabled tenant"),
            404: OpenApiResponse(description="not_found: the tenant has no events of this user"),
        },
    )
    def get(self, request: Request, user_id: str) -> Response:
        view = user_score_get(tenant=tenant_of(request).slug, user_id=user_id)
        data = {
            "user_id": view.user_id,
            "score": round(view.score, SCORE_DECIMALS),
            "segment": view.segment,
            "events_counted": view.events_counted,
            "updated_at": view.updated_at,
        }
        return Response(self.OutputSerializer(data).data)
